//! The model manager: an actor that owns the served models. It loads every package in
//! the models directory at start, and loads or unloads one on request or when a
//! `models.added` / `models.removed` event names it. Handlers ask it for a model and
//! then talk to that model directly.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use slough_modelkit::package::{self, ModelKind as PackageKind};
use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::{ModelInfo, ModelLoad},
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    chat::ChatModel, config::Config, embed::EmbeddingModel, metrics::Metrics, runtime::Runtime,
    text::TextModel,
};

/// A served model.
#[derive(Debug, Clone)]
pub enum Served {
    Chat(Arc<ChatModel>),
    Embedding(Arc<EmbeddingModel>),
}

impl Served {
    pub fn info(&self) -> &ModelInfo {
        match self {
            Served::Chat(model) => &model.info,
            Served::Embedding(model) => &model.info,
        }
    }

    pub fn text(&self) -> &TextModel {
        match self {
            Served::Chat(model) => &model.text,
            Served::Embedding(model) => &model.text,
        }
    }
}

enum Message {
    Get(String, oneshot::Sender<Option<Served>>),
    Loads(oneshot::Sender<Vec<ModelLoad>>),
    List(oneshot::Sender<Vec<ModelInfo>>),
    Load(String, oneshot::Sender<Result<ModelInfo, ErrorBody>>),
    Loaded(
        String,
        Result<Served, String>,
        Option<oneshot::Sender<Result<ModelInfo, ErrorBody>>>,
    ),
    Unload(String, oneshot::Sender<Result<ModelInfo, ErrorBody>>),
    /// A package was added to (true) or removed from the models directory.
    Event(String, bool),
}

/// The handle handlers use.
#[derive(Clone)]
pub struct Models {
    sender: mpsc::UnboundedSender<Message>,
}

/// What loading needs.
#[derive(Clone)]
struct Loader {
    dir: PathBuf,
    /// The runtime, or why it could not be loaded.
    runtime: Result<Runtime, String>,
    config: Config,
    metrics: Metrics,
}

impl Loader {
    /// Loads package `id` (blocking: builds its session), counting the attempt.
    fn load(&self, id: &str) -> Result<Served, String> {
        let loaded = self.build(id);
        self.metrics.model_load(id, loaded.is_ok());
        loaded
    }

    fn build(&self, id: &str) -> Result<Served, String> {
        let runtime = self.runtime.as_ref().map_err(Clone::clone)?;
        let dir = self.dir.join(id);
        let manifest = package::read_manifest(&dir).map_err(|err| err.to_string())?;
        let metrics = self.metrics.model(id);
        Ok(match manifest.kind {
            PackageKind::Chat => Served::Chat(Arc::new(ChatModel::start(
                &dir,
                &manifest,
                runtime,
                &self.config,
                metrics,
            )?)),
            PackageKind::Embedding => Served::Embedding(Arc::new(EmbeddingModel::start(
                &dir, &manifest, runtime, metrics,
            )?)),
            PackageKind::Classifier => {
                return Err(format!(
                    "{id} is a classifier head; the personality service uses it, inference does not serve it"
                ));
            }
        })
    }
}

impl Models {
    /// Loads every package in `dir` (a package that fails is logged and skipped), then
    /// starts the actor.
    pub async fn start(
        dir: PathBuf,
        runtime: Result<Runtime, String>,
        config: Config,
        metrics: Metrics,
    ) -> Models {
        let loader = Loader {
            dir: dir.clone(),
            runtime,
            config,
            metrics,
        };
        let startup = loader.clone();
        let models = tokio::task::spawn_blocking(move || {
            let ids: Vec<String> = package::list(&startup.dir)
                .unwrap_or_default()
                .into_iter()
                .filter(|manifest| manifest.kind != PackageKind::Classifier)
                .map(|manifest| manifest.id)
                .collect();
            let mut served = BTreeMap::new();
            for id in ids {
                match startup.load(&id) {
                    Ok(model) => {
                        tracing::info!(model = %id, provider = %model.info().provider, "model loaded");
                        served.insert(id, model);
                    }
                    Err(err) => tracing::error!(model = %id, "cannot load: {err}"),
                }
            }
            served
        })
        .await
        .unwrap_or_default();
        if models.is_empty() {
            tracing::warn!(dir = %dir.display(), "no model packages loaded; import one with `slough models import`");
        }
        let (sender, inbox) = mpsc::unbounded_channel();
        let actor = Actor {
            models,
            loader,
            inbox,
            sender: sender.clone(),
        };
        tokio::spawn(actor.run());
        Models { sender }
    }

    /// The model `id`, or `model_not_found` naming it.
    pub async fn get(&self, id: &str) -> Result<Served, ErrorBody> {
        let (reply, answer) = oneshot::channel();
        let _ = self.sender.send(Message::Get(id.to_owned(), reply));
        answer.await.ok().flatten().ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::ModelNotFound,
                format!("model {id:?} is not served here"),
            )
        })
    }

    /// Every served model, sorted by id.
    pub async fn list(&self) -> Vec<ModelInfo> {
        let (reply, answer) = oneshot::channel();
        let _ = self.sender.send(Message::List(reply));
        answer.await.unwrap_or_default()
    }

    /// The load of every model.
    pub async fn loads(&self) -> Vec<ModelLoad> {
        let (reply, answer) = oneshot::channel();
        let _ = self.sender.send(Message::Loads(reply));
        answer.await.unwrap_or_default()
    }

    /// Loads package `id` (a no-op when it is served already).
    pub async fn load(&self, id: &str) -> Result<ModelInfo, ErrorBody> {
        let (reply, answer) = oneshot::channel();
        let _ = self.sender.send(Message::Load(id.to_owned(), reply));
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Stops serving `id`; requests already running finish.
    pub async fn unload(&self, id: &str) -> Result<ModelInfo, ErrorBody> {
        let (reply, answer) = oneshot::channel();
        let _ = self.sender.send(Message::Unload(id.to_owned(), reply));
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl Models {
    /// Follows a `models.added` (`added`) or `models.removed` event.
    pub fn follow(&self, id: String, added: bool) {
        let _ = self.sender.send(Message::Event(id, added));
    }
}

fn stopped() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "the model manager has stopped")
}

struct Actor {
    models: BTreeMap<String, Served>,
    loader: Loader,
    inbox: mpsc::UnboundedReceiver<Message>,
    sender: mpsc::UnboundedSender<Message>,
}

impl Actor {
    async fn run(mut self) {
        while let Some(message) = self.inbox.recv().await {
            match message {
                Message::Get(id, reply) => {
                    let _ = reply.send(self.models.get(&id).cloned());
                }
                Message::Loads(reply) => {
                    let loads = self.models.values().map(|model| match model {
                        Served::Chat(chat) => chat.load(),
                        Served::Embedding(embedding) => embedding.load(),
                    });
                    let _ = reply.send(loads.collect());
                }
                Message::List(reply) => {
                    let _ = reply.send(self.models.values().map(|m| m.info().clone()).collect());
                }
                Message::Load(id, reply) => match self.models.get(&id) {
                    Some(model) => {
                        let _ = reply.send(Ok(model.info().clone()));
                    }
                    None => self.spawn_load(id, Some(reply)),
                },
                Message::Loaded(id, outcome, reply) => {
                    let answer = match outcome {
                        Ok(model) => {
                            tracing::info!(model = %id, provider = %model.info().provider, "model loaded");
                            let info = model.info().clone();
                            self.models.insert(id, model);
                            Ok(info)
                        }
                        Err(err) => {
                            tracing::error!(model = %id, "cannot load: {err}");
                            Err(ErrorBody::new(
                                ErrorCode::ModelNotFound,
                                format!("cannot load {id:?}: {err}"),
                            ))
                        }
                    };
                    if let Some(reply) = reply {
                        let _ = reply.send(answer);
                    }
                }
                Message::Unload(id, reply) => {
                    let answer = match self.models.remove(&id) {
                        Some(model) => {
                            tracing::info!(model = %id, "model unloaded");
                            Ok(model.info().clone())
                        }
                        None => Err(ErrorBody::new(
                            ErrorCode::ModelNotFound,
                            format!("model {id:?} is not served here"),
                        )),
                    };
                    let _ = reply.send(answer);
                }
                Message::Event(id, added) => self.on_event(id, added),
            }
        }
    }

    /// Loads on a blocking thread; the actor keeps answering meanwhile.
    fn spawn_load(&self, id: String, reply: Option<oneshot::Sender<Result<ModelInfo, ErrorBody>>>) {
        let loader = self.loader.clone();
        let sender = self.sender.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = loader.load(&id);
            let _ = sender.send(Message::Loaded(id, outcome, reply));
        });
    }

    /// Follows a `models.added` / `models.removed` event.
    fn on_event(&mut self, id: String, added: bool) {
        if added && !self.models.contains_key(&id) {
            self.spawn_load(id, None);
        } else if !added && self.models.remove(&id).is_some() {
            tracing::info!(model = %id, "model unloaded: its package was removed");
        }
    }
}
