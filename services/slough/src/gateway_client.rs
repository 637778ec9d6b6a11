//! A small client of a running gateway's HTTP API for the `eval` commands: JSON in,
//! JSON out, the gateway's error message on failure; and the key those commands use by
//! default.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use crate::Settings;

/// One gateway, one key.
#[derive(Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl GatewayClient {
    /// A client of the gateway at `base` (`http://127.0.0.1:8080`) using `key`.
    pub fn new(base: &str, key: &str) -> anyhow::Result<GatewayClient> {
        Ok(GatewayClient {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// `POST path` with `body` as JSON.
    pub async fn post<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> anyhow::Result<Value> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(request).await
    }

    /// A `POST path` with the key, for a caller that reads the answer its own way.
    pub fn post_request(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    /// `POST path` with `body` as JSON, answered with server-sent events: each event's
    /// JSON goes to `on_event` as it arrives; an `error` event fails the call.
    pub async fn post_events<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
        mut on_event: impl FnMut(Value),
    ) -> anyhow::Result<()> {
        let mut response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or_default();
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            anyhow::bail!("the gateway answered {status}: {message}");
        }
        let mut pending = Vec::new();
        while let Some(bytes) = response.chunk().await? {
            pending.extend_from_slice(&bytes);
            while let Some(end) = pending.windows(2).position(|pair| pair == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let Some(data) = text.trim().strip_prefix("data: ") else {
                    continue;
                };
                if data == "[DONE]" {
                    return Ok(());
                }
                let value: Value = serde_json::from_str(data)
                    .with_context(|| format!("a server-sent event that is not JSON: {data}"))?;
                if let Some(message) = value["error"]["message"].as_str() {
                    anyhow::bail!("the gateway failed midway: {message}");
                }
                on_event(value);
            }
        }
        anyhow::bail!("the gateway's event stream ended before [DONE]")
    }

    /// `POST path` with a multipart form: the text `fields` and one `file` part.
    pub async fn upload(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        file_name: &str,
        content: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let mut form = reqwest::multipart::Form::new();
        for (name, value) in fields {
            form = form.text((*name).to_owned(), (*value).to_owned());
        }
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(content).file_name(file_name.to_owned()),
        );
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .multipart(form);
        self.send(request).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.http.delete(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            anyhow::bail!("the gateway answered {status}: {message}");
        }
        Ok(body)
    }

    /// The models of `kind` (`chat`, `embedding`) the gateway lists, in its order, not
    /// counting persona aliases.
    pub async fn models(&self, kind: &str) -> anyhow::Result<Vec<String>> {
        let list = self.get("/v1/models").await?;
        Ok(list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|model| model["kind"] == kind && model["persona"].is_null())
            .filter_map(|model| model["id"].as_str())
            .map(str::to_owned)
            .collect())
    }

    /// The first model of `kind` (`chat`, `embedding`) the gateway lists, not counting
    /// persona aliases.
    pub async fn first_model(&self, kind: &str) -> anyhow::Result<String> {
        self.models(kind)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the gateway serves no {kind} model"))
    }
}

/// The gateway's URL: given; else where a running `slough up` (or `slough run gateway`)
/// with this data directory serves it, as its run file says; else `http://` and the
/// configured listen address.
pub fn gateway_url(settings: &Settings, given: Option<String>) -> String {
    if let Some(url) = given {
        return url;
    }
    let running = crate::run_file::RunFile::running(&settings.common.data_dir)
        .into_iter()
        .find_map(|file| file.server("gateway", "api"));
    format!("http://{}", running.unwrap_or(settings.gateway.listen))
}

/// Which gateway and key a command uses (`--url`, `--key`).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// The gateway's URL (default: where a running `slough up` serves it, else http://
    /// and the configured gateway.listen).
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// The API key (default: SLOUGH_API_KEY, then SLOUGH_ADMIN_KEY, then the admin key
    /// `slough up` made).
    #[arg(long, global = true)]
    pub key: Option<String>,
}

impl GatewayArgs {
    /// A client of that gateway with that key.
    pub fn client(self, settings: &Settings) -> anyhow::Result<GatewayClient> {
        GatewayClient::new(
            &gateway_url(settings, self.url),
            &api_key(settings, self.key)?,
        )
    }
}

/// The key: given, `SLOUGH_API_KEY`, the admin key the platform was started with
/// (`SLOUGH_ADMIN_KEY`), or the one `slough up` generated.
pub fn api_key(settings: &Settings, given: Option<String>) -> anyhow::Result<String> {
    let from_env = || {
        std::env::var("SLOUGH_API_KEY")
            .ok()
            .filter(|key| !key.is_empty())
    };
    if let Some(key) = given
        .or_else(from_env)
        .or_else(slough_gateway::keys::admin_key_from_env)
    {
        return Ok(key);
    }
    let file = slough_gateway::keys::admin_key_path(&settings.common.data_dir);
    std::fs::read_to_string(&file)
        .map(|key| key.trim().to_owned())
        .map_err(|_| {
            anyhow::anyhow!(
                "no API key: pass --key, set SLOUGH_API_KEY or SLOUGH_ADMIN_KEY, or run where \
                 `slough up` keeps its admin key ({})",
                file.display()
            )
        })
}
