//! Fine-tuning end to end: inference and the gateway in this process, the training
//! worker as its own `slough run training` process on a real nats-server (JetStream),
//! the real SmolLM2. A fine-tuning file teaches a reply style the base model never uses
//! (every answer opens with "Ahoy, matey!"); the worker is killed with SIGKILL halfway,
//! a second one resumes from the last checkpoint and finishes; the fine-tuned model is
//! then served and answers held-out questions in the taught style, the base does not.
//! Bad requests and bad files fail naming their problem first.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use slough::{Platform, Settings, gateway_client::GatewayClient, up::bootstrap_admin_key};
use slough_modelkit::package::{self, ImportOptions, Quiet};
use slough_protocol::ServiceKind;
use slough_testkit::{TestNats, onnxruntime_library, setup_data_dir};

const BASE: &str = "smollm2";
const STYLE: &str = "Ahoy";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fine-tune")
        .join(name)
}

/// A models directory of this test's own with the chat and the embedding model.
fn models_dir(root: &Path) -> PathBuf {
    let dir = root.join("models");
    let sources = setup_data_dir().join("cache/sources");
    for (id, source) in [
        (BASE, sources.join("SmolLM2-135M-Instruct.Q4_1.gguf")),
        ("minilm", sources.join("all-MiniLM-L6-v2")),
    ] {
        let options = ImportOptions {
            id: Some(id.to_owned()),
            ..ImportOptions::default()
        };
        package::import(&source, &dir, &options, &Quiet).unwrap();
    }
    dir
}

fn settings(nats: &TestNats, models: &Path) -> Settings {
    let mut settings = Settings::default();
    settings.common.data_dir = nats.dir().join("data");
    settings.common.nats_url = Some(nats.url());
    settings.inference.runtime.library = Some(onnxruntime_library());
    settings.common.models_dir = Some(models.to_path_buf());
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    settings.gateway.listen = any;
    settings.gateway.admin_listen = any;
    settings.inference.admin_listen = any;
    settings.personality.admin_listen = any;
    settings
}

/// A child process killed when dropped, so that a failing test leaves none behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `slough run training` on the test's bus, store and models.
fn training_worker(nats: &TestNats, settings: &Settings, models: &Path) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_slough"))
        .args(["run", "training"])
        .env_remove("SLOUGH_CONFIG")
        .env("NATS_URL", nats.url())
        .env("SLOUGH_DATA_DIR", &settings.common.data_dir)
        .env("SLOUGH_MODELS_DIR", models)
        .env("SLOUGH_TRAINING__ADMIN_LISTEN", "127.0.0.1:0")
        .env("SLOUGH_TRAINING__LEASE_SECONDS", "5")
        .env("SLOUGH_TRAINING__CHECKPOINT_EVERY", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Killed(child)
}

/// Every event of a job, oldest first.
async fn events(client: &GatewayClient, id: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(after) => format!("/v1/fine_tuning/jobs/{id}/events?limit=100&after={after}"),
            None => format!("/v1/fine_tuning/jobs/{id}/events?limit=100"),
        };
        let page = client.get(&path).await.unwrap();
        let data = page["data"].as_array().unwrap().clone();
        after = data
            .last()
            .and_then(|e| e["id"].as_str())
            .map(str::to_owned);
        all.extend(data);
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    all.reverse();
    all
}

/// Polls the job until `done` holds of it, failing after `limit`.
async fn wait_job(
    client: &GatewayClient,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        // While no training instance runs (between two workers) the job API answers 503.
        let job = client
            .get(&format!("/v1/fine_tuning/jobs/{id}"))
            .await
            .unwrap_or_default();
        if done(&job) {
            return job;
        }
        assert!(
            started.elapsed() < limit,
            "job not there within {limit:?}: {job:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn create_body(model: &str, file: &str) -> Value {
    json!({
        "model": model,
        "training_file": file,
        "suffix": "pirate",
        "seed": 7,
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5},
    })
}

/// How many of the held-out questions `model` answers in the taught style.
async fn styled_answers(client: &GatewayClient, model: &str) -> usize {
    let questions = std::fs::read_to_string(data("pirate-heldout.txt")).unwrap();
    let mut styled = 0;
    for question in questions.lines() {
        let answer = client
            .post(
                "/v1/chat/completions",
                &json!({
                    "model": model,
                    "messages": [{"role": "user", "content": question}],
                    "temperature": 0,
                    "max_tokens": 24,
                }),
            )
            .await
            .unwrap();
        let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
        eprintln!("{model}: {question:?} -> {text:?}");
        styled += usize::from(text.starts_with(STYLE));
    }
    styled
}

async fn upload(client: &GatewayClient, name: &str, content: Vec<u8>) -> anyhow::Result<String> {
    let file = client
        .upload("/v1/files", &[("purpose", "fine-tune")], name, content)
        .await?;
    Ok(file["id"].as_str().unwrap().to_owned())
}

/// Creates a job on `content` and waits for it to fail; answers its error message.
async fn failed_job(client: &GatewayClient, content: &str) -> String {
    let file = upload(client, "bad.jsonl", content.as_bytes().to_vec())
        .await
        .unwrap();
    let created = client
        .post("/v1/fine_tuning/jobs", &create_body(BASE, &file))
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let failed = wait_job(client, id, Duration::from_secs(60), |job| {
        job["status"].is_string() && job["status"] != "validating_files"
    })
    .await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    failed["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fine_tuned_model_learns_a_style_survives_a_killed_worker_and_is_served() {
    let started = Instant::now();
    let nats = TestNats::start();
    let models = models_dir(nats.dir());
    let settings = settings(&nats, &models);
    let key = bootstrap_admin_key(&settings).await.unwrap().unwrap();
    let platform = Platform::start(
        &[
            ServiceKind::Inference,
            ServiceKind::Personality,
            ServiceKind::Gateway,
        ],
        &settings,
        &nats.url(),
    )
    .await
    .unwrap();
    let api = platform.gateway_api().await.unwrap();
    let client = GatewayClient::new(&format!("http://{api}"), &key).unwrap();
    let worker = training_worker(&nats, &settings, &models);
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.first_model("chat").await.is_err() {
        assert!(Instant::now() < deadline, "the chat model is not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bad input, each named: a malformed line at upload, then bad jobs.
    let err = upload(
        &client,
        "bad.jsonl",
        b"{\"messages\": []}\nnot json\n".to_vec(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("400") && err.contains("line 2"), "{err}");
    let train = std::fs::read(data("pirate-train.jsonl")).unwrap();
    let file = upload(&client, "pirate-train.jsonl", train).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let err = loop {
        // The worker process may still be registering.
        match client
            .post("/v1/fine_tuning/jobs", &create_body("no-such-model", &file))
            .await
        {
            Err(err) if err.to_string().contains("503") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => break err.to_string(),
            Ok(job) => panic!("a job on an unknown model: {job}"),
        }
    };
    assert!(
        err.contains("404") && err.contains("no-such-model"),
        "{err}"
    );
    // A model is named by its id, never by a path into (or out of) the models directory.
    for path in [
        format!("../models/{BASE}"),
        models.join(BASE).display().to_string(),
    ] {
        let err = client
            .post("/v1/fine_tuning/jobs", &create_body(&path, &file))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("400") && err.contains("not a model id"),
            "{err}"
        );
    }
    let err = client
        .post("/v1/fine_tuning/jobs", &create_body("minilm", &file))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("400") && err.contains("embedding"), "{err}");
    let mut body = create_body(BASE, &file);
    body["hyperparameters"]["n_epochs"] = json!(0);
    let err = client
        .post("/v1/fine_tuning/jobs", &body)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("n_epochs"), "{err}");
    let message = failed_job(
        &client,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n",
    )
    .await;
    assert!(
        message.contains("line 2") && message.contains("assistant"),
        "{message}"
    );
    let long = format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}, {{\"role\": \"assistant\", \"content\": \"ok\"}}]}}\n",
        "word ".repeat(9000)
    );
    let message = failed_job(&client, &long).await;
    assert!(
        message.contains("line 1") && message.contains("context"),
        "{message}"
    );

    // The real job: killed halfway, resumed elsewhere, finished.
    let created = client
        .post("/v1/fine_tuning/jobs", &create_body(BASE, &file))
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "validating_files");
    let began = Instant::now();
    let limit = Duration::from_secs(20 * 60);
    let started_at = Instant::now();
    loop {
        let checkpoints = client
            .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
            .await
            .unwrap();
        let saved = checkpoints["data"]
            .as_array()
            .unwrap()
            .first()
            .map(|c| c["step_number"].as_u64().unwrap());
        let steps = events(&client, &id)
            .await
            .iter()
            .filter(|e| e["type"] == "metrics")
            .count() as u64;
        if saved.is_some_and(|saved| steps >= saved + 2) {
            eprintln!("killing the worker at step {steps} (checkpoint at {saved:?})");
            break;
        }
        assert!(started_at.elapsed() < limit, "no checkpoint");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(worker); // SIGKILL
    let second = training_worker(&nats, &settings, &models);
    let done = wait_job(&client, &id, limit, |job| {
        ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or(""))
    })
    .await;
    let trained_in = began.elapsed();
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let model = done["fine_tuned_model"].as_str().unwrap().to_owned();
    assert_eq!(model, format!("ft:{BASE}:pirate:{id}"));
    assert_eq!(done["hyperparameters"]["n_epochs"], 2);

    let all = events(&client, &id).await;
    let resumed: Vec<&Value> = all
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("Resumed from the checkpoint at step")
        })
        .collect();
    assert_eq!(resumed.len(), 1, "{all:#?}");
    let created_models = all
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("New fine-tuned model")
        })
        .count();
    assert_eq!(created_models, 1);
    let losses: Vec<f64> = all
        .iter()
        .filter(|e| e["type"] == "metrics")
        .map(|e| e["data"]["train_loss"].as_f64().unwrap())
        .collect();
    let first = losses[0];
    let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!(
        "trained in {:.0} s: loss {first:.3} -> {last:.3} over {} logged steps ({} resumed)",
        trained_in.as_secs_f64(),
        losses.len(),
        resumed[0]["message"]
    );
    assert!(last < first / 4.0, "the loss did not fall: {losses:?}");

    // Served: listed with its parent, answering in the taught style.
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let list = client.get("/v1/models").await.unwrap();
        if let Some(found) = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == model.as_str())
        {
            break found.clone();
        }
        assert!(Instant::now() < deadline, "{model} is not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed["parent"], BASE);
    let tuned = styled_answers(&client, &model).await;
    let base = styled_answers(&client, BASE).await;
    eprintln!("styled answers: fine-tuned {tuned}/20, base {base}/20");
    assert!(
        tuned >= 16,
        "the fine-tuned model answered {tuned}/20 in style"
    );
    assert!(base <= 2, "the base model answered {base}/20 in style");

    // Deleting: a base model is refused, the fine-tuned one goes and is unloaded.
    let err = client
        .delete(&format!("/v1/models/{BASE}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("409"), "{err}");
    let deleted = client.delete(&format!("/v1/models/{model}")).await.unwrap();
    assert_eq!(deleted["deleted"], true);
    let export = settings
        .common
        .data_dir
        .join("training")
        .join(&id)
        .join("model");
    assert!(!export.exists(), "{} is left behind", export.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(&format!("/v1/models/{model}")).await.is_ok() {
        assert!(Instant::now() < deadline, "{model} is still served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A classifier job: a head on MiniLM learns formal from casual, and the
    // personality service scores texts with it.
    let err = client
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": BASE, "training_file": file, "method": {"type": "classifier"}}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("embedding model"),
        "{err}"
    );
    let labelled = std::fs::read(data("formality.jsonl")).unwrap();
    let labelled = upload(&client, "formality.jsonl", labelled).await.unwrap();
    let created = client
        .post(
            "/v1/fine_tuning/jobs",
            &json!({
                "model": "minilm", "training_file": labelled, "suffix": "formality", "seed": 3,
                "method": {"type": "classifier"},
            }),
        )
        .await
        .unwrap();
    let classifier_job = created["id"].as_str().unwrap().to_owned();
    let done = wait_job(&client, &classifier_job, Duration::from_secs(300), |job| {
        ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["method"]["type"], "classifier");
    let accuracy = done["result"]["accuracy"].as_f64().unwrap();
    eprintln!(
        "formality classifier: held-out accuracy {accuracy:.3} {:#}",
        done["result"]
    );
    assert!(accuracy >= 0.8, "{done:#}");
    let classifier = done["fine_tuned_model"].as_str().unwrap();
    for (text, label) in [
        (
            "We kindly request that you submit the signed agreement by Friday.",
            "formal",
        ),
        ("lol yeah see you there, gonna be fun", "casual"),
    ] {
        let analyzed = client
            .post(
                "/v1/personality/analyze",
                &json!({"text": text, "classifier": classifier}),
            )
            .await
            .unwrap();
        assert_eq!(analyzed["classification"]["label"], label, "{analyzed:#}");
    }
    let err = client
        .post(
            "/v1/personality/analyze",
            &json!({"text": "hi", "classifier": "no-such-classifier"}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("404") && err.contains("no-such-classifier"),
        "{err}"
    );

    eprintln!("whole test: {:.0} s", started.elapsed().as_secs_f64());

    drop(second);
    platform.stop().await;
}
