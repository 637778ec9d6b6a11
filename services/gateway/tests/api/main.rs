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
mod collections;
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
    BUILTIN_PERSONAS, CHAT, EMBED, Platform, gateway_config, inference_config, read_events,
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
