//! What the inference tests share: the real model packages (imported once into a cache
//! under the data directory), and an inference service on its own nats-server.

#![allow(dead_code, reason = "each test file uses part of this")]

use std::{net::SocketAddr, path::PathBuf};

use slough_bus::{Bus, BusError, StreamItem};
use slough_inference::Config;
use slough_protocol::{
    Endpoint, ServiceKind,
    inference::{
        self, ChatMessage, FinishReason, GenerateChunk, GenerateEnd, GenerateRequest, PromptInput,
        Role,
    },
};
use slough_service::{CommonConfig, ServiceContext};
use slough_testkit::TestNats;
use tokio_util::sync::CancellationToken;

pub const CHAT: &str = slough_testkit::CHAT_MODEL;
pub const EMBED: &str = slough_testkit::EMBED_MODEL;

/// Where setup put the runtime and the sources.
pub fn data_dir() -> PathBuf {
    slough_testkit::setup_data_dir()
}

/// SmolLM2 and MiniLM as packages `smollm2` and `minilm`.
pub fn models_dir() -> PathBuf {
    slough_testkit::test_models_dir()
}

/// An inference service with the test models, on its own nats-server.
pub struct Inference {
    pub nats: TestNats,
    pub bus: Bus,
    pub admin: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Inference {
    /// Starts with `config`, serving the test models.
    pub async fn start(config: Config) -> Inference {
        let nats = TestNats::start();
        let common = CommonConfig {
            data_dir: data_dir(),
            models_dir: Some(models_dir()),
            ..CommonConfig::default()
        };
        let ctx = ServiceContext::start(
            ServiceKind::Inference,
            slough_inference::VERSION,
            &common,
            &nats.url(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
        .expect("context");
        let admin = ctx.admin_url().to_owned();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            slough_inference::run(ctx, config, stop)
                .await
                .expect("inference runs");
        });
        let bus = slough_bus::connect(
            &nats.url(),
            "test",
            CommonConfig::default().nats.bus_options(),
        )
        .await
        .expect("bus");
        // Ready once it answers `models`.
        for _ in 0..600 {
            let listed = bus
                .call(&inference::MODELS, &inference::ModelsRequest {})
                .await;
            if listed.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Inference {
            nats,
            bus,
            admin,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// The value of one series on the admin server's `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        slough_testkit::scrape_metric(&self.admin, series)
            .await
            .unwrap_or_else(|| panic!("{series} missing from /metrics"))
    }

    /// Calls `endpoint`.
    pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        endpoint: &Endpoint<Req, Resp>,
        request: &Req,
    ) -> Result<Resp, BusError> {
        self.bus.call(endpoint, request).await
    }

    /// Opens a generation stream.
    pub async fn open(
        &self,
        request: &GenerateRequest,
    ) -> Result<slough_bus::StreamReceiver<GenerateChunk, GenerateEnd>, BusError> {
        self.bus.open(&inference::GENERATE, request).await
    }

    /// Runs a generation to its end.
    pub async fn generate(&self, request: &GenerateRequest) -> Result<Generated, BusError> {
        let mut stream = self.open(request).await?;
        let mut generated = Generated::default();
        while let Some(item) = stream.next().await {
            match item? {
                StreamItem::Chunk(chunk) => {
                    let i = chunk.index as usize;
                    if generated.texts.len() <= i {
                        generated.texts.resize(i + 1, String::new());
                    }
                    generated.texts[i].push_str(&chunk.text);
                    generated.chunks.push(chunk);
                }
                StreamItem::End(end) => {
                    generated.finish = end.finish_reasons.clone();
                    generated.end = Some(end);
                }
            }
        }
        Ok(generated)
    }
}

/// A finished generation.
#[derive(Debug, Default)]
pub struct Generated {
    pub texts: Vec<String>,
    pub chunks: Vec<GenerateChunk>,
    pub finish: Vec<FinishReason>,
    pub end: Option<GenerateEnd>,
}

impl Generated {
    pub fn text(&self) -> &str {
        self.texts.first().map_or("", String::as_str)
    }
}

/// A chat request to the test chat model with one user message.
pub fn chat(prompt: &str) -> GenerateRequest {
    let mut request = GenerateRequest::new(
        CHAT,
        PromptInput::Messages(vec![ChatMessage::new(Role::User, prompt)]),
    );
    request.max_tokens = Some(48);
    request.sampling.temperature = Some(0.0);
    request
}
