//! A platform for the gateway's tests: a real nats-server (or a cluster of three), the
//! inference service with the real test models, and the gateway on a free port with a
//! fresh SQLite store.

#![allow(dead_code, unused_imports, reason = "each test file uses part of this")]

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use slough_protocol::ServiceKind;
use slough_service::{CommonConfig, ServiceContext};
use slough_testkit::{TestNats, TestNatsCluster};
use tokio_util::sync::CancellationToken;

pub use slough_testkit::{CHAT_MODEL as CHAT, EMBED_MODEL as EMBED};

/// One running service and how to stop it.
struct Running {
    admin: String,
    listening: slough_service::Listening,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The NATS the platform runs on.
pub enum Nats {
    One(TestNats),
    Cluster(TestNatsCluster),
}

impl Nats {
    /// The server's URL; on a cluster, its first server's only: every service starts
    /// there and learns the others from it, so losing that server moves them all.
    pub fn url(&self) -> String {
        match self {
            Nats::One(nats) => nats.url(),
            Nats::Cluster(cluster) => cluster.url(0),
        }
    }

    /// The single server (the tests that stop and restart it run on one).
    fn one(&mut self) -> &mut TestNats {
        match self {
            Nats::One(nats) => nats,
            Nats::Cluster(_) => panic!("this platform runs on a NATS cluster"),
        }
    }

    pub fn stop(&mut self) {
        self.one().stop();
    }

    pub fn restart(&mut self) {
        self.one().restart();
    }

    /// The cluster (a platform started with `Options::cluster`).
    pub fn cluster(&mut self) -> &mut TestNatsCluster {
        match self {
            Nats::Cluster(cluster) => cluster,
            Nats::One(_) => panic!("this platform runs on one NATS server"),
        }
    }
}

pub struct Platform {
    pub nats: Nats,
    pub url: String,
    pub admin_key: String,
    pub http: reqwest::Client,
    gateway: Option<Running>,
    inference: Option<Running>,
    personality: Option<Running>,
    rag: Option<Running>,
    training: Option<Running>,
    /// More inference replicas, from [`Platform::add_inference_replica`].
    replicas: Vec<Running>,
    /// Gateways started by [`Platform::add_gateway`].
    gateways: Vec<Running>,
    common: CommonConfig,
    inference_config: slough_inference::Config,
    data: tempfile::TempDir,
}

/// The built-in personas, in the order the personality service lists them.
pub const BUILTIN_PERSONAS: [&str; 6] = [
    "assistant",
    "sage",
    "mentor",
    "jester",
    "analyst",
    "companion",
];

/// What a platform runs beyond the usual.
#[derive(Debug, Default)]
pub struct Options {
    /// The gateway's store (default: SQLite in the data directory).
    pub database_url: Option<String>,
    /// The models (default: the test models).
    pub models_dir: Option<std::path::PathBuf>,
    /// Also the training service.
    pub training: bool,
    /// On a cluster of three NATS servers instead of one.
    pub cluster: bool,
}

/// The gateway settings tests start from: a free port, small limits.
pub fn gateway_config() -> slough_gateway::Config {
    slough_gateway::Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        max_body_bytes: 64 * 1024,
        key_cache_ms: 200,
        ..slough_gateway::Config::default()
    }
}

/// The inference settings tests start from: the test models, a short context.
pub fn inference_config() -> slough_inference::Config {
    let mut config = slough_inference::Config {
        max_context: 512,
        ..slough_inference::Config::default()
    };
    config.runtime.library = Some(slough_testkit::onnxruntime_library());
    config
}

impl Platform {
    /// Starts inference, then the gateway (on SQLite), and waits until both answer.
    pub async fn start(
        gateway: slough_gateway::Config,
        inference: slough_inference::Config,
    ) -> Platform {
        Platform::start_on(gateway, inference, None).await
    }

    /// As [`Platform::start`], the gateway's store at `database_url` when given.
    pub async fn start_on(
        gateway: slough_gateway::Config,
        inference: slough_inference::Config,
        database_url: Option<String>,
    ) -> Platform {
        let options = Options {
            database_url,
            ..Options::default()
        };
        Platform::start_with(gateway, inference, options).await
    }

    /// As [`Platform::start`], with `options`.
    pub async fn start_with(
        gateway: slough_gateway::Config,
        inference: slough_inference::Config,
        options: Options,
    ) -> Platform {
        let nats = if options.cluster {
            Nats::Cluster(TestNatsCluster::start(3).await)
        } else {
            Nats::One(TestNats::start())
        };
        let data = tempfile::tempdir().expect("data dir");
        let models = options
            .models_dir
            .unwrap_or_else(slough_testkit::test_models_dir);
        let common = CommonConfig {
            data_dir: data.path().to_owned(),
            models_dir: Some(models.clone()),
            database_url: options.database_url.map(secrecy::SecretString::from),
            ..CommonConfig::default()
        };
        // As the slough command does before it starts a gateway: the first admin key.
        let store = slough_store::Store::open(common.database_url.as_ref(), data.path())
            .await
            .expect("the gateway's store");
        slough_gateway::keys::bootstrap_admin_key(&store, data.path(), None)
            .await
            .expect("an admin key");
        store.close().await;
        let inference_config = inference.clone();
        let inference = start_inference(&common, &nats, inference).await;
        let personality = start_service(
            ServiceKind::Personality,
            &common,
            &nats,
            move |ctx, stop| {
                Box::pin(async move {
                    slough_personality::run(ctx, slough_personality::Config::default(), stop)
                        .await
                        .expect("personality runs")
                })
            },
        )
        .await;
        let rag_config = slough_rag::Config::default();
        let rag = start_service(ServiceKind::Rag, &common, &nats, move |ctx, stop| {
            Box::pin(async move {
                slough_rag::run(ctx, rag_config, stop)
                    .await
                    .expect("rag runs")
            })
        })
        .await;
        let training = if options.training {
            let run = start_service(ServiceKind::Training, &common, &nats, move |ctx, stop| {
                Box::pin(async move {
                    slough_training::run(ctx, slough_training::Config::default(), stop)
                        .await
                        .expect("training runs")
                })
            });
            Some(run.await)
        } else {
            None
        };
        let (gateway, url) = start_gateway(&common, &nats, gateway).await;
        let key_file = slough_gateway::keys::admin_key_path(data.path());
        let packages = slough_modelkit::package::list(&models).expect("the models");
        let expected: usize = packages
            .iter()
            .map(|package| match package.kind {
                slough_modelkit::package::ModelKind::Chat => 1 + BUILTIN_PERSONAS.len(),
                _ => 1,
            })
            .sum();
        let mut platform = Platform {
            nats,
            url,
            admin_key: String::new(),
            http: reqwest::Client::new(),
            gateway: Some(gateway),
            inference: Some(inference),
            personality: Some(personality),
            rag: Some(rag),
            training,
            replicas: Vec::new(),
            gateways: Vec::new(),
            common,
            inference_config,
            data,
        };
        for _ in 0..600 {
            if let Ok(key) = std::fs::read_to_string(&key_file) {
                platform.admin_key = key.trim().to_owned();
                let models = platform.get("/v1/models", &platform.admin_key).send().await;
                if let Ok(response) = models
                    && response.status() == 200
                {
                    let body: Value = response.json().await.expect("models json");
                    // Every model, and each chat model's alias for each built-in persona.
                    if body["data"]
                        .as_array()
                        .is_some_and(|listed| listed.len() == expected)
                    {
                        return platform;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the platform did not become ready");
    }

    pub fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(body)
    }

    /// `POST path` with `key` and `body`: the response, whatever its status.
    pub async fn send(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.post(path, key, body).send().await.expect("POST")
    }

    pub fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
    }

    /// `DELETE path` with `key`.
    pub async fn delete(&self, path: &str, key: &str) -> reqwest::Response {
        self.http
            .delete(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .expect("DELETE")
    }

    /// Uploads `text` as a fine-tuning file named `name` with `key`; answers its id.
    pub async fn upload_file(&self, key: &str, name: &str, text: &str) -> String {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "fine-tune")
            .part(
                "file",
                reqwest::multipart::Part::text(text.to_owned()).file_name(name.to_owned()),
            );
        let file: Value = self
            .http
            .post(format!("{}/v1/files", self.url))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("the file's JSON");
        file["id"].as_str().expect("a file id").to_owned()
    }

    /// `GET path` with `key`: the JSON answer.
    pub async fn get_json(&self, path: &str, key: &str) -> Value {
        let response = self.get(path, key).send().await.expect("GET");
        response.json().await.expect("a JSON answer")
    }

    /// `POST path` with `key` and `body`: the JSON answer.
    pub async fn post_json(&self, path: &str, key: &str, body: &Value) -> Value {
        let response = self.post(path, key, body).send().await.expect("POST");
        response.json().await.expect("a JSON answer")
    }

    /// Creates an API key with `settings` (merged over a name) and returns its secret.
    pub async fn create_key(&self, settings: Value) -> (String, Value) {
        let mut body = serde_json::json!({"name": "test key"});
        if let (Some(body), Some(settings)) = (body.as_object_mut(), settings.as_object()) {
            body.extend(settings.clone());
        }
        let response = self
            .post("/v1/keys", &self.admin_key, &body)
            .send()
            .await
            .expect("create key");
        assert_eq!(response.status(), 201);
        let created: Value = response.json().await.expect("created key");
        (
            created["secret"].as_str().expect("secret").to_owned(),
            created["key"].clone(),
        )
    }

    /// `GET /v1/usage` for `key`, once it counts `requests` requests (usage rows are
    /// written off the response path), or as it is after five seconds.
    pub async fn usage_once(&self, key: &str, requests: u64) -> Value {
        let mut report = Value::Null;
        for _ in 0..100 {
            report = self.get_json("/v1/usage", key).await;
            if report["requests"] == requests {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report
    }

    /// The gateway's `/metrics` value of `series` (0 when absent).
    pub async fn gateway_metric(&self, series: &str) -> f64 {
        metric(self.gateway.as_ref().map(|g| g.admin.as_str()), series).await
    }

    /// The inference service's `/metrics` value of `series` (0 when absent).
    pub async fn inference_metric(&self, series: &str) -> f64 {
        metric(self.inference.as_ref().map(|i| i.admin.as_str()), series).await
    }

    /// Starts another inference replica on the same NATS; returns its index for
    /// [`Platform::replica_metric`].
    pub async fn add_inference_replica(&mut self) -> usize {
        let replica =
            start_inference(&self.common, &self.nats, self.inference_config.clone()).await;
        self.replicas.push(replica);
        self.replicas.len() - 1
    }

    /// Starts another gateway replica on the same NATS and store; returns its URL.
    pub async fn add_gateway(&mut self, config: slough_gateway::Config) -> String {
        let (gateway, url) = start_gateway(&self.common, &self.nats, config).await;
        self.gateways.push(gateway);
        url
    }

    /// Whether extra replica `index` has `series` on its `/metrics` yet.
    pub async fn replica_has(&self, index: usize, series: &str) -> bool {
        match self.replicas.get(index) {
            Some(replica) => slough_testkit::scrape_metric(&replica.admin, series)
                .await
                .is_some(),
            None => false,
        }
    }

    /// The `/metrics` value of `series` on extra replica `index` (0 when absent).
    pub async fn replica_metric(&self, index: usize, series: &str) -> f64 {
        metric(self.replicas.get(index).map(|r| r.admin.as_str()), series).await
    }

    /// Stops the inference service (the gateway stays).
    pub async fn stop_inference(&mut self) {
        if let Some(inference) = self.inference.take() {
            inference.stop().await;
        }
        for replica in self.replicas.drain(..) {
            replica.stop().await;
        }
    }

    /// Stops the gateway (flushing its usage rows), then inference and personality.
    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
        for gateway in std::mem::take(&mut self.gateways) {
            gateway.stop().await;
        }
        self.stop_inference().await;
        if let Some(personality) = self.personality.take() {
            personality.stop().await;
        }
        if let Some(rag) = self.rag.take() {
            rag.stop().await;
        }
        if let Some(training) = self.training.take() {
            training.stop().await;
        }
    }

    /// The personality service's value of `series` (0 when absent).
    pub async fn personality_metric(&self, series: &str) -> f64 {
        metric(
            self.personality
                .as_ref()
                .map(|running| running.admin.as_str()),
            series,
        )
        .await
    }

    /// The SQLite store's directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }
}

async fn metric(admin: Option<&str>, series: &str) -> f64 {
    match admin {
        Some(admin) => slough_testkit::scrape_metric(admin, series)
            .await
            .unwrap_or(0.0),
        None => 0.0,
    }
}

async fn start_inference(
    common: &CommonConfig,
    nats: &Nats,
    config: slough_inference::Config,
) -> Running {
    start_service(ServiceKind::Inference, common, nats, move |ctx, stop| {
        Box::pin(async move {
            slough_inference::run(ctx, config, stop)
                .await
                .expect("inference runs")
        })
    })
    .await
}

type RunFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn start_service(
    kind: ServiceKind,
    common: &CommonConfig,
    nats: &Nats,
    run: impl FnOnce(ServiceContext, CancellationToken) -> RunFuture,
) -> Running {
    let ctx = ServiceContext::start(
        kind,
        slough_gateway::VERSION,
        common,
        &nats.url(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("service context");
    let admin = ctx.admin_url().to_owned();
    let listening = ctx.listening();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(ctx, shutdown.clone()));
    Running {
        admin,
        listening,
        shutdown,
        task,
    }
}

/// Starts a gateway and waits for its API's address; answers it as a URL.
async fn start_gateway(
    common: &CommonConfig,
    nats: &Nats,
    config: slough_gateway::Config,
) -> (Running, String) {
    let gateway = start_service(ServiceKind::Gateway, common, nats, move |ctx, stop| {
        Box::pin(async move {
            slough_gateway::run(ctx, config, stop)
                .await
                .expect("gateway runs")
        })
    })
    .await;
    let api = gateway
        .listening
        .wait("api")
        .await
        .expect("the gateway announces its API address");
    (gateway, format!("http://{api}"))
}

/// Reads a server-sent event stream to its end: the JSON events, and whether it ended
/// with `data: [DONE]`.
pub async fn read_events(response: reqwest::Response) -> (Vec<Value>, bool) {
    let text = response.text().await.expect("stream body");
    let mut events = Vec::new();
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(data).expect("event JSON"));
        }
    }
    (events, done)
}

/// Sends `request()` until it is answered `status`; fails when that takes over a second.
pub async fn answered_within_a_second(request: impl Fn() -> reqwest::RequestBuilder, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let now = request().send().await.unwrap().status().as_u16();
        if now == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {now} on the other gateway, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
