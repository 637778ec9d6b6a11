//! The API over HTTP against a running platform: real NATS, real inference with
//! SmolLM2 and MiniLM, the gateway on SQLite. One test binary; a module per area, each
//! test a scenario on a platform of its own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

#[path = "../support/mod.rs"]
mod support;

mod audit;
mod cluster;
mod collections;
mod erasure;
mod errors;
mod generation;
mod isolation;
mod keys;
mod personas;
mod pii;
mod streams;

use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};
use slough_protocol::inference;
use support::{
    BUILTIN_PERSONAS, CHAT, EMBED, Platform, answered_within_a_second, gateway_config,
    inference_config, read_events,
};

fn france() -> Value {
    json!([{"role": "user", "content": "What is the capital of France?"}])
}

/// Sends `body` to the chat route and returns the status and the error object.
async fn chat_error(platform: &Platform, key: &str, body: reqwest::Body) -> (u16, Value) {
    let response = platform
        .http
        .post(format!("{}/v1/chat/completions", platform.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].clone())
}

/// The store of a platform started on `url` (a test PostgreSQL database), to look at
/// what the platform keeps.
async fn open_store(url: &str) -> slough_store::Store {
    let url = secrecy::SecretString::from(url.to_owned());
    slough_store::Store::open(Some(&url), std::path::Path::new("."))
        .await
        .unwrap()
}

/// A one-example fine-tuning file.
const TRAINING_FILE: &str = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Ahoy\"}]}\n";

/// A fine-tuned model, as the training service names them.
const TUNED: &str = "ft:smollm2:mine:ftjob-owned-by-a";

/// A models directory with the test models and `TUNED`, a copy of the chat model
/// presented as fine-tuned from it (files hard-linked, so nothing is copied).
fn models_with_a_tuned_model(root: &std::path::Path) -> std::path::PathBuf {
    let models = root.join("models");
    let link = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::hard_link(entry.path(), to.join(entry.file_name())).unwrap();
        }
    };
    let test_models = slough_testkit::test_models_dir();
    for id in [CHAT, EMBED] {
        link(&test_models.join(id), &models.join(id));
    }
    let tuned = models.join(TUNED);
    link(&test_models.join(CHAT), &tuned);
    let manifest = tuned.join(slough_modelkit::package::MANIFEST);
    let mut fields: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    fields["id"] = json!(TUNED);
    fields["parent"] = json!(CHAT);
    std::fs::remove_file(&manifest).unwrap();
    std::fs::write(&manifest, serde_json::to_vec(&fields).unwrap()).unwrap();
    models
}

/// Records the job that made [`TUNED`] (`ftjob-owned-by-a`) as `owner`'s, trained on
/// `file`, as the training service records a finished job.
async fn finished_job(store: &slough_store::Store, owner: &str, file: &str) {
    use sea_orm::{ActiveModelTrait as _, Set};
    use slough_protocol::training::{Hyperparameters, Lora};
    slough_store::entities::fine_tuning_job::ActiveModel {
        id: Set("ftjob-owned-by-a".to_owned()),
        owner: Set(owner.to_owned()),
        model: Set(CHAT.to_owned()),
        training_file: Set(file.to_owned()),
        validation_file: Set(None),
        status: Set("succeeded".to_owned()),
        method: Set("supervised".to_owned()),
        hyperparameters: Set(serde_json::to_string(&Hyperparameters::default()).unwrap()),
        lora: Set(serde_json::to_string(&Lora::default()).unwrap()),
        suffix: Set(Some("mine".to_owned())),
        seed: Set(0),
        fine_tuned_model: Set(Some(TUNED.to_owned())),
        trained_tokens: Set(Some(10)),
        error: Set(None),
        result: Set(None),
        metadata: Set(None),
        created_at: Set(chrono::Utc::now()),
        finished_at: Set(Some(chrono::Utc::now())),
        estimated_finish: Set(None),
        lease_owner: Set(None),
        lease_expires_at: Set(None),
    }
    .insert(store.connection())
    .await
    .unwrap();
}
